"""The desktop window: Qt widgets on top of the engine in client.core, joined by one bridge."""
