"""Configuration: one pydantic-settings model read from the environment and `.env`."""
from config.settings import Settings, load_settings, SettingsError

__all__ = ["Settings", "load_settings", "SettingsError"]
