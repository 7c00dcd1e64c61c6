"""Who the caller is: what a client (the web dashboard) needs to shape its screens."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Me(BaseModel):
    """The caller's token as the service sees it (never the token itself)."""

    user_id: str = Field(description="The user the token speaks for.")
    role: Literal["admin", "user", "agent"]
    token_id: str = Field(description="The token's id (as in `dashboard-api token list`).")
