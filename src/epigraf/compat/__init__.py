"""The original implementation's files: its hyperparameters and key names, its snapshot pickles.

    from epigraf.compat import from_original, import_original, read_original_snapshot
    G, D = from_original(config, g_state, d_state)          # original hyperparameters + state dicts
    snap = read_original_snapshot("network-snapshot.pkl")   # G, G_ema, D state dicts; executes nothing
    import_original("network-snapshot.pkl", "net.safetensors")   # = `epigraf import`
"""

from epigraf.compat.importer import import_original, load_original
from epigraf.compat.original import from_original, model_config
from epigraf.compat.snapshot_reader import read_original_snapshot, read_original_state_dict

__all__ = [
    "from_original",
    "import_original",
    "load_original",
    "model_config",
    "read_original_snapshot",
    "read_original_state_dict",
]
