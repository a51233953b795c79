"""Runner hooks; importing this module registers them."""
