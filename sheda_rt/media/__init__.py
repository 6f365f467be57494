"""Uploaded images: type decided by content, size capped, stored under DATA_DIR/media."""
