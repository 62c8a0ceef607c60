"""The audit trail: who changed what, on which object, recorded in the change's own transaction.

Never slide names or labels: only ids, the action and small details the caller chooses.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from idcscan.core.db import AuditEvent


def audit(
    session: Session,
    client_id: int | None,
    action: str,
    target_type: str | None = None,
    target_id: object = None,
    **detail: Any,
) -> None:
    """Record a state-changing call in the same transaction as the change itself."""
    session.add(
        AuditEvent(
            client_id=client_id,
            action=action,
            target_type=target_type,
            target_id=None if target_id is None else str(target_id),
            detail=detail,
        )
    )
