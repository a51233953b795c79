"""Data the project makes itself; no registration (the real mmdet/mmseg/mmdet3d datasets read it)."""
