"""Print the placement API's OpenAPI document (committed as docs/openapi-placement.json).

Regenerate with ``python -m placement.openapi > docs/openapi-placement.json``;
a test fails when the committed file and the app disagree.
"""

from __future__ import annotations

import json

from placement.app import create_app
from placement.config import PlacementConfig


def openapi_json() -> str:
    schema = create_app(PlacementConfig()).openapi()
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(openapi_json(), end="")
