"""Labels a contact carries, shared by the services that set them (ingest) and read them
(matcher): tags and topic names."""

from __future__ import annotations

import re

MAX_TAG = 128
MAX_TAGS = 200
TOPIC_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
TOPIC_RULE = "use 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
