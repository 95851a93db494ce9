"""The mmedge command line: a thin Typer front end over the mmedge library."""
