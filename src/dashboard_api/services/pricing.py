"""Cost of a task computed from its token counts and model with the configured price table."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from dashboard_api.settings import ModelPrice

_PER_MILLION = Decimal(1_000_000)


class PriceTable:
    """USD per million tokens per model, with a default for unknown models."""

    def __init__(self, models: dict[str, ModelPrice], default: ModelPrice) -> None:
        self.models = models
        self.default = default

    def price_for(self, model: str | None) -> ModelPrice:
        if model is None:
            return self.default
        return self.models.get(model, self.default)

    def cost_micros(
        self,
        model: str | None,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_write_tokens: int,
    ) -> int:
        """Exact cost in micro-dollars (tokens x USD/Mtok = micro-USD x tokens / 1)."""
        p = self.price_for(model)
        # USD per million tokens equals micro-dollars per token.
        micros = (
            p.input * input_tokens
            + p.output * output_tokens
            + p.cache_read * cache_read_tokens
            + p.cache_write * cache_write_tokens
        )
        return int(micros.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
