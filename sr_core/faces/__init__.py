"""Face restoration: detection, alignment, restoration and paste-back."""
