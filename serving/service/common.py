"""What every resource's service shares: a product's row, category and name, a column of the
product table, and the listing of allowed values an error shows."""

from __future__ import annotations

from serving.errors import NotFoundError
from serving.state import ServingState


def listing(values: list[str] | tuple[str, ...], limit: int = 30) -> str:
    shown = ", ".join(values[:limit])
    return shown + (f" ... ({len(values)} in all)" if len(values) > limit else "")


def product_row(state: ServingState, product_id: str) -> int:
    row = state.products.get(product_id)
    if row < 0:
        raise NotFoundError(f"unknown product {product_id!r}: not in the model's catalogue ({state.info.version})")
    return row


def product_category(state: ServingState, row: int) -> str | None:
    code = state.category.codes[row]
    return state.category.labels[code] if code >= 0 else None


def product_name(state: ServingState, row: int) -> str | None:
    if state.product_names is None or state.product_names[row] is None:
        return None
    return str(state.product_names[row])



def product_column(state: ServingState, name: str) -> list[object] | None:
    table = state.product_table
    return table.column(name).to_pylist() if name in table.column_names else None
