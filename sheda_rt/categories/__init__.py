"""Admin-managed listing categories (e.g. "Student housing", "Luxury")."""
