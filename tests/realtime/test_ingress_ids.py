"""Message ids of the Redis ingress, on both backends: recorded once, with the change."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI

from dashboard_api.ingress.messages import claim_message


class _Refused(Exception):
    pass


async def test_a_message_id_is_claimed_once_and_only_with_its_transaction(app: FastAPI) -> None:
    ctx = app.state.ctx
    now = ctx.clock.now()
    # A transaction that fails after claiming (the change was refused) keeps no claim.
    with contextlib.suppress(_Refused):
        async with ctx.db.write() as session:
            assert await claim_message(session, "t1", "m-1", now)
            raise _Refused
    async with ctx.db.write() as session:
        assert await claim_message(session, "t1", "m-1", now)
    async with ctx.db.write() as session:
        assert not await claim_message(session, "t1", "m-1", now)
        # Ids are scoped by task.
        assert await claim_message(session, "t2", "m-1", now)
