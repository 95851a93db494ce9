"""``python -m mmedge_cli``: the mmedge command, as torchrun starts it (``torchrun ... -m mmedge_cli run RECIPE``)."""

from mmedge_cli.main import app

app(prog_name="mmedge")
