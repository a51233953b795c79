"""Pictures of what the window-sparse backbones compute."""
from .windows import StageWindows, draw_kept_windows, kept_window_masks, prediction_picture

__all__ = ['StageWindows', 'draw_kept_windows', 'kept_window_masks', 'prediction_picture']
