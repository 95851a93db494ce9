"""The shipped bundle: ``manifest`` reads and verifies one (device side); ``writer`` builds one (the bundle step)."""
