"""The daemon: all I/O. It composes features and engine; it never imports torch."""
