"""One colour per optimizer preset (conf/optimizer/), the same in every figure."""

from __future__ import annotations

import zlib

PRESET_COLORS = {
    "sgd": "#1f77b4",  # blue
    "momentum": "#ff7f0e",  # orange
    "nesterov": "#8c564b",  # brown
    "adagrad": "#2ca02c",  # green
    "rmsprop": "#d62728",  # red
    "adam": "#9467bd",  # purple
    "adamw": "#e377c2",  # pink
    "adadelta": "#bcbd22",  # olive
    "nadam": "#843c39",  # dark red
    "radam": "#9c9ede",  # lavender
    "adamax": "#8ca252",  # moss
    "lion": "#17becf",  # cyan
    "muon": "#393b79",  # indigo
    "schedulefree_adamw": "#7f7f7f",  # grey
    "prodigy": "#e7ba52",  # gold
}
# Names that are not presets (e.g. "adam scratch"): a stable pick from colours not used above.
OTHER_COLORS = ("#aec7e8", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d")


def color(name: str) -> str:
    """The preset's colour; other names get one of OTHER_COLORS, the same on every call."""
    return PRESET_COLORS.get(name) or OTHER_COLORS[zlib.crc32(name.encode()) % len(OTHER_COLORS)]
