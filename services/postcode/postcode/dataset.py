"""The data set: postal codes of the PyPI package countrystatecity-postal-codes (ODbL 1.0, from the
countries-states-cities-database project), loaded into PostgreSQL by `python3 -m postcode load`.

Each configured country is loaded once per package version: a country already loaded from this
version is left alone, so the release task can run at every deploy. A (re)load replaces the
country's rows in one transaction, so searches see the old rows or the new ones, never a mix or none.
An advisory lock makes two loads at once take turns. Records without a place name are skipped.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

import psycopg
from countrystatecity_postal_codes import get_postcodes_of_country

from fdservice import logs

log = logging.getLogger("postcode.load")

PACKAGE = "countrystatecity-postal-codes"
SOURCE = f"{PACKAGE} (ODbL 1.0, countries-states-cities-database)"
# pg_advisory_lock's key for loads ("pcld").
LOCK_KEY = 0x70636C64


def version() -> str:
    return metadata.version(PACKAGE)


def rows(country: str) -> list[tuple[Any, ...]]:
    """(country, code, place, state_code, latitude, longitude) of every record with a place name."""
    return [(country, p.code, p.localityName, p.stateCode, p.latitude, p.longitude)
            for p in get_postcodes_of_country(country) if p.localityName and p.code]


def load(countries: tuple[str, ...], lock_timeout_ms: int) -> dict[str, int]:
    """Load the countries this package version has not loaded yet; {country: rows} of those loaded."""
    loaded: dict[str, int] = {}
    current = version()
    with psycopg.connect(autocommit=True, application_name="postcode-load") as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            for country in countries:
                found = conn.execute("SELECT version FROM postcode_datasets WHERE country = %s", (country,)).fetchone()
                if found is not None and found[0] == current:
                    logs.event(log, "country loaded already", country=country, version=current)
                    continue
                records = rows(country)
                if not records:
                    raise ValueError(f"{PACKAGE} {current} has no postal codes with place names for {country}")
                with conn.transaction():
                    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
                    conn.execute("DELETE FROM postcodes WHERE country = %s", (country,))
                    with conn.cursor().copy("COPY postcodes (country, code, place, state_code, latitude, longitude)"
                                            " FROM STDIN") as copy:
                        for record in records:
                            copy.write_row(record)
                    conn.execute(
                        "INSERT INTO postcode_datasets (country, source, version, row_count) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT (country) DO UPDATE SET source = EXCLUDED.source, version = EXCLUDED.version,"
                        " row_count = EXCLUDED.row_count, loaded_at = now()",
                        (country, SOURCE, current, len(records)),
                    )
                logs.event(log, "country loaded", country=country, rows=len(records), version=current)
                loaded[country] = len(records)
            if loaded:
                # Rows copied in land in the GIN index's pending list, which the planner counts against
                # the index until a VACUUM merges it: right after a load it chose a sequential scan.
                conn.execute("VACUUM (ANALYZE) postcodes")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return loaded
