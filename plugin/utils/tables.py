"""Markdown tables, the format every benchmark and the demo print their results in."""
from collections.abc import Sequence


def format_cell(value: object, float_format: str | None = None) -> str:
    """A float with ``float_format`` (default: 3 significant digits, one decimal from 100 on); None as empty."""
    if isinstance(value, float):
        if float_format is not None:
            return format(value, float_format)
        return f'{value:.3g}' if abs(value) < 100 else f'{value:.1f}'
    return '' if value is None else str(value)


def markdown_table(rows: Sequence[dict[str, object]], float_format: str | None = None) -> str:
    """Rows (dicts) as a markdown table; its columns are every key, in order of first appearance."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(format_cell(row.get(c), float_format) for c in columns) + ' |' for row in rows]
    return '\n'.join(lines)
