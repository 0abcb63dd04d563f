"""Regenerate the views section of README.md from the view specs (the same text the VLM prompt uses)."""

import re
from pathlib import Path

from cleanrl_vlmcar.views import all_specs

README = Path(__file__).resolve().parents[1] / "README.md"


def render() -> str:
    return "\n\n".join(spec.doc().replace("### ", "#### ") for spec in all_specs())


def main() -> None:
    text = README.read_text()
    new = re.sub(r"<!-- views:start -->.*<!-- views:end -->",
                 lambda _: "<!-- views:start -->\n" + render() + "\n<!-- views:end -->", text, flags=re.S)
    README.write_text(new)


if __name__ == "__main__":
    main()
