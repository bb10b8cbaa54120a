"""The MOR database: read this server's devices, write a plan in one transaction.

MOR's ``devices`` table is only ever UPDATEd, never inserted into or altered,
and only for rows assigned to this server. Everything a run writes — the
changed ``reg_status`` values, the project's own state rows, the server's
summary — commits together or not at all, so the GUI never sees a half-written
run nor the NULL window of the legacy collector.

One module per concern: ``engine`` (connections, errors, transactions, named
locks, the MySQL/SQLite fork), ``migrations``, ``read``, ``write``, ``runs`` (a
poll's and an event batch's reads and writes, whole), ``servers`` (the summary rows),
``history`` (transitions, latency samples, purging), ``contacts`` (PJSIP),
``notified`` (webhooks); ``bulk`` is the one chunked reader and bulk writer they
all use, ``rows`` maps value classes to columns, ``fitting`` cuts text to what
MOR's columns hold. Callers use the names below.
"""

from __future__ import annotations

from .bulk import BATCH, CHUNK
from .contacts import (
    ContactKey,
    contact_key,
    load_contact_keys,
    load_contacts_of,
    load_qualify,
    replace_contacts,
    write_contacts,
)
from .engine import (
    RETRYABLE_MYSQL_ERRORS,
    StoreError,
    describe_db_error,
    in_transaction,
    make_engine,
    write_lock_name,
)
from .fitting import fit, names_mor_can_hold
from .history import (
    LATENCY_EVERY,
    LATENCY_HOURS,
    PURGE_CHUNK,
    count_recent_transitions,
    latency_due,
    load_recent_transitions,
    purge_old,
    write_history,
    write_latency_samples,
)
from .migrations import (
    LATEST_VERSION,
    MIGRATE_WAIT,
    MIGRATIONS,
    ensure_schema,
    migrate,
    schema_version,
)
from .notified import (
    AlertDevice,
    alert_devices,
    load_notified,
    notified_with_status,
    write_notified,
)
from .read import (
    ServerMetrics,
    ami_credentials_from_servers,
    find_devices_elsewhere,
    last_success,
    load_devices,
    load_devices_named,
    load_states,
    load_states_of,
    poll_observed_at,
    server_metrics,
)
from .runs import load_batch_inputs, load_poll_inputs, write_batch, write_poll
from .servers import ServerRun, record_failure, write_listener_state
from .write import write_event_plan, write_plan, write_reg_statuses, write_states

__all__ = [
    "BATCH",
    "CHUNK",
    "LATENCY_EVERY",
    "LATENCY_HOURS",
    "LATEST_VERSION",
    "MIGRATE_WAIT",
    "MIGRATIONS",
    "PURGE_CHUNK",
    "RETRYABLE_MYSQL_ERRORS",
    "AlertDevice",
    "ContactKey",
    "ServerMetrics",
    "ServerRun",
    "StoreError",
    "alert_devices",
    "ami_credentials_from_servers",
    "contact_key",
    "count_recent_transitions",
    "describe_db_error",
    "ensure_schema",
    "find_devices_elsewhere",
    "fit",
    "in_transaction",
    "last_success",
    "latency_due",
    "load_batch_inputs",
    "load_contact_keys",
    "load_contacts_of",
    "load_devices",
    "load_devices_named",
    "load_notified",
    "load_poll_inputs",
    "load_qualify",
    "load_recent_transitions",
    "load_states",
    "load_states_of",
    "make_engine",
    "migrate",
    "names_mor_can_hold",
    "notified_with_status",
    "poll_observed_at",
    "purge_old",
    "record_failure",
    "replace_contacts",
    "schema_version",
    "server_metrics",
    "write_batch",
    "write_contacts",
    "write_event_plan",
    "write_history",
    "write_latency_samples",
    "write_listener_state",
    "write_lock_name",
    "write_notified",
    "write_plan",
    "write_poll",
    "write_reg_statuses",
    "write_states",
]
