"""The domain: searches over the loaded postal codes, the only code that reads the database.

The two queries are module constants so that the tests EXPLAIN exactly what the service runs.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

COLUMNS = "country, code, place, state_code, latitude, longitude"

# Codes starting with a prefix: the btree of postcodes_code_prefix (text_pattern_ops).
BY_CODE_PREFIX = (
    f"SELECT {COLUMNS} FROM postcodes"
    " WHERE code LIKE %(pattern)s AND (%(country)s::text IS NULL OR country = %(country)s)"
    " ORDER BY code, place LIMIT %(limit)s"
)

# Places whose name starts with the text, or resembles it (pg_trgm similarity, at least 0.3 by default:
# 'Munchen' finds München, 'Hamburk' Hamburg): both through the trigram index postcodes_place_trgm.
# Names that start with the text come first (what a user typing a name expects), then by similarity.
BY_PLACE = (
    f"SELECT {COLUMNS}, round(similarity(place, %(text)s)::numeric, 3) AS score FROM postcodes"
    " WHERE (place ILIKE %(pattern)s OR place %% %(text)s) AND (%(country)s::text IS NULL OR country = %(country)s)"
    " ORDER BY place ILIKE %(pattern)s DESC, similarity(place, %(text)s) DESC, place, code LIMIT %(limit)s"
)


def like_prefix(text: str) -> str:
    """A LIKE pattern matching what starts with `text` (its own wildcards escaped)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def by_code_prefix(conn: psycopg.Connection[Any], prefix: str, country: str | None, limit: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(BY_CODE_PREFIX, {"pattern": like_prefix(prefix), "country": country, "limit": limit})
        return cur.fetchall()


def by_place(conn: psycopg.Connection[Any], text: str, country: str | None, limit: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(BY_PLACE, {"text": text, "pattern": like_prefix(text), "country": country, "limit": limit})
        return [{**row, "score": float(row["score"])} for row in cur.fetchall()]


def datasets(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """What was loaded: one row per country."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT country, source, version, row_count, loaded_at FROM postcode_datasets ORDER BY country")
        return cur.fetchall()
