"""The built-in algorithms, registered through entry points exactly as a plugin would be.

The core never imports these modules by name; ``distkeras_async.registry`` loads them.
"""
