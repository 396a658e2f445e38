"""The vlft command line: one small module per subcommand."""
