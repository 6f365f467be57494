"""AI image enhancement of listing photos (issue 16 §4)."""
