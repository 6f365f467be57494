"""Push notifications: devices, preferences, and the dispatcher that reaches users whose app is closed."""
