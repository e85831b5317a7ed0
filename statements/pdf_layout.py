"""Page and table layout for a statement's PDF: A4 landscape pages, column widths measured in the
font the cells are drawn in, and tables that flow onto more pages (a short one moves whole to
the next page, a long one continues with its column titles repeated).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from matplotlib.artist import Artist
from matplotlib.backend_bases import RendererBase
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont
from matplotlib.ft2font import FT2Font, Kerning, LoadFlags
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text

if TYPE_CHECKING:
    from matplotlib.ft2font import GlyphIndexType


PAGE_W, PAGE_H = 11.69, 8.27  # A4 landscape, inches
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 0.5, 0.45, 0.5
FONT = 8.5  # table text, points
ROW_H = 0.22  # inches per table row
HEADING_H = 0.42  # inches for a table's heading line and the space above it
MIN_SCALE = 0.78  # tables shrink at most to this to fit the first page, then flow on
FOOTER_ROOM = 0.15  # inches kept free above the footer
INK, MUTED, RULE, SHADE = "#1a1a1a", "#666666", "#bbbbbb", "#eef1f5"
GROUP_SHADE = "#f7f8fa"
DRAFT_COLOUR, ISSUED_COLOUR = "#b7791f", "#2f855a"
DRAFT_MARK = "DRAFT — not an invoice"
SENT_COLOUR, RECEIVED_COLOUR = "#d1603d", "#2b6cb0"
GRID = "#e5e5e5"
AXIS_ZORDER = 1.5  # where axes draw their ticks and grid (below the data lines)
PANELS_PER_PAGE = 12
MAX_PANEL_H = 2.4  # inches per row of chart panels, spacing included


def _esc(text: str) -> str:
    """Literal text for matplotlib (a ``$`` would start mathtext)."""
    return text.replace("$", r"\$")


@dataclass(frozen=True)
class _Column:
    title: str
    align: str  # "left" | "right"


@dataclass
class _Block:
    """A heading and a table; tables may be split across pages."""

    heading: str
    columns: Sequence[_Column]
    rows: list[list[str]]
    note: str = ""
    emphasis: frozenset[int] = frozenset()  # row indices drawn bold
    groups: frozenset[int] = frozenset()  # rows heading a group: their first cell spans the row
    header: bool = True  # a row of column titles (repeated on every page the table is on)
    ruled: bool = True  # rules between rows
    invoice: bool = False  # part of what page 1 should hold (tables shrink a little for it)

    def height(self, scale: _Scale) -> float:
        return scale.heading + scale.row * (int(self.header) + len(self.rows))


class _Cells(Artist):
    """The text of a page's tables, drawn straight through the renderer: one ``draw_text``
    per cell, without a :class:`~matplotlib.text.Text` (and its layout) for each. A cell sits
    on its row's baseline (where a one-line text centred on the row has it) and a
    right-aligned cell ends at the advance width of its text, so figures line up."""

    def __init__(self) -> None:
        super().__init__()
        self.set_zorder(3)  # where texts are
        # (x, y of the row's centre, in inches; text; right-aligned; size; weight)
        self.cells: list[tuple[float, float, str, bool, float, str]] = []

    def add(self, x: float, y: float, s: str, right: bool, size: float, weight: str) -> None:
        self.cells.append((x, y, s, right, size, weight))

    def draw(self, renderer: RendererBase) -> None:
        if not self.get_visible() or not self.cells:
            return
        fig = self.get_figure(root=True)
        assert fig is not None
        to_display = fig.dpi_scale_trans
        gc = renderer.new_gc()
        gc.set_foreground(INK)
        styles: dict[tuple[float, str], tuple[FontProperties, float, _Advances, float]] = {}
        for x, y, s, right, size, weight in self.cells:
            style = styles.get((size, weight))
            if style is None:
                prop = FontProperties(size=size, weight=weight)
                _, h, d = renderer.get_text_width_height_descent("lp", prop, ismath=False)
                pixels = cast(float, renderer.points_to_pixels(size))
                style = styles[(size, weight)] = (prop, d - h / 2, _advances(prop), pixels)
            prop, baseline, advances, pixels = style
            px, py = to_display.transform((x, y))
            if right:
                px -= advances.width(s, pixels)
            renderer.draw_text(gc, px, py + baseline, s, prop, 0.0)
        gc.restore()


class _Advances:
    """Advance widths (with kerning) of texts in one font file, in font units, cached for the
    process."""

    def __init__(self, path: str) -> None:
        self.font = FT2Font(path)
        self.units = self.font.units_per_EM
        self.glyphs: dict[str, tuple[GlyphIndexType, int]] = {}
        self.kerning: dict[tuple[GlyphIndexType, GlyphIndexType], int] = {}
        self.lock = threading.Lock()

    def width(self, s: str, pixels: float) -> float:
        """The advance width of ``s`` at a size of ``pixels`` (display units per em)."""
        total = 0
        previous: GlyphIndexType | None = None
        with self.lock:
            for ch in s:
                glyph = self.glyphs.get(ch)
                if glyph is None:
                    index = self.font.get_char_index(ord(ch))
                    advance = self.font.load_glyph(index, LoadFlags.NO_SCALE).horiAdvance
                    glyph = self.glyphs[ch] = (index, advance)
                index, advance = glyph
                if previous is not None:
                    kern = self.kerning.get((previous, index))
                    if kern is None:
                        kern = self.kerning[(previous, index)] = self.font.get_kerning(
                            previous, index, Kerning.UNSCALED
                        )
                    total += kern
                total += advance
                previous = index
        return total * pixels / self.units


_ADVANCES: dict[str, _Advances] = {}


def _advances(prop: FontProperties) -> _Advances:
    path = findfont(prop)
    found = _ADVANCES.get(path)
    if found is None:
        found = _ADVANCES.setdefault(path, _Advances(path))
    return found


class _Page:
    def __init__(self) -> None:
        self.fig = Figure(figsize=(PAGE_W, PAGE_H))
        self.y = PAGE_H - MARGIN_TOP  # inches from the bottom
        self.cells = _Cells()
        self.fig.add_artist(self.cells)

    def text(self, x: float, y: float, s: str, **kw: Any) -> Text:
        return self.fig.text(x / PAGE_W, y / PAGE_H, _esc(s), **kw)

    def rule(self, y: float, colour: str = RULE, width: float = 0.6) -> None:
        self.fig.add_artist(
            Line2D(
                [MARGIN_X / PAGE_W, 1 - MARGIN_X / PAGE_W],
                [y / PAGE_H, y / PAGE_H],
                color=colour,
                linewidth=width,
                transform=self.fig.transFigure,
            )
        )

    def shade(self, y: float, h: float, colour: str = SHADE) -> None:
        self.fig.add_artist(
            Rectangle(
                (MARGIN_X / PAGE_W, y / PAGE_H),
                (PAGE_W - 2 * MARGIN_X) / PAGE_W,
                h / PAGE_H,
                facecolor=colour,
                edgecolor="none",
                transform=self.fig.transFigure,
                zorder=0,
            )
        )


_WEIGHTS: dict[str, _Advances] = {}  # the font file's advances by weight (the same at any size)


def _text_width(s: str, font: float, weight: str = "normal") -> float:
    """The advance width of ``s`` in inches at ``font`` points (as :class:`_Cells` draws it)."""
    advances = _WEIGHTS.get(weight)
    if advances is None:
        advances = _WEIGHTS.setdefault(weight, _advances(FontProperties(weight=weight)))
    return advances.width(s, font / 72)


CELL_PAD = 0.07  # inches between a cell's text and its column's edge
COLUMN_GAP = 0.12  # inches more between the texts of neighbouring columns


def _widths(block: _Block, font: float) -> list[float]:
    """Column widths in inches: the widest text of each column (group rows span the row and
    do not count), measured in the font it is drawn in, with padding."""
    out = []
    for j, col in enumerate(block.columns):
        texts = [(col.title, "bold")] if block.header else []
        texts += [
            (row[j], "bold" if i in block.emphasis else "normal")
            for i, row in enumerate(block.rows)
            if i not in block.groups
        ]
        widest = max((_text_width(t, font, w) for t, w in texts if t), default=0.0)
        out.append(widest + 2 * CELL_PAD + COLUMN_GAP)
    return out


@dataclass(frozen=True)
class _Scale:
    """Table sizes, shrunk together when a statement's invoice part would not fit on the
    first page otherwise."""

    factor: float = 1.0

    @property
    def font(self) -> float:
        return FONT * self.factor

    @property
    def row(self) -> float:
        return ROW_H * self.factor

    @property
    def heading(self) -> float:
        return HEADING_H * self.factor


def _draw_table(
    page: _Page, block: _Block, rows: Sequence[int], scale: _Scale, *, header: bool
) -> None:
    """Draw the rows of ``block`` with these indices under ``page.y`` (and its column
    titles first when ``header``)."""
    width = PAGE_W - 2 * MARGIN_X
    font, row_h = scale.font, scale.row
    widths = _widths(block, font)
    if sum(widths) > width:  # shrink the font until the texts fit between their paddings
        fixed = len(widths) * (2 * CELL_PAD + COLUMN_GAP)
        font = max(5.0, font * (width - fixed) / (sum(widths) - fixed))
        widths = _widths(block, font)
    spare = max(0.0, width - sum(widths)) / len(widths)
    widths = [w + spare for w in widths]
    xs = [MARGIN_X]
    for w in widths[:-1]:
        xs.append(xs[-1] + w)

    def row_text(cells: Sequence[str], y: float, weight: str) -> None:
        for j, (col, cell) in enumerate(zip(block.columns, cells, strict=True)):
            if col.align == "right":
                page.cells.add(xs[j] + widths[j] - CELL_PAD, y, cell, True, font, weight)
            else:
                page.cells.add(xs[j] + CELL_PAD, y, cell, False, font, weight)

    y = page.y
    if header:
        page.shade(y - row_h, row_h)
        row_text([c.title for c in block.columns], y - row_h / 2, "bold")
        page.rule(y - row_h, INK, 0.8)
        y -= row_h
    for i in rows:
        cells = block.rows[i]
        if i in block.groups:
            page.shade(y - row_h, row_h, GROUP_SHADE)
            page.cells.add(MARGIN_X + CELL_PAD, y - row_h / 2, cells[0], False, font, "bold")
        else:
            bold = i in block.emphasis
            if bold:
                page.rule(y, INK, 0.6)
            row_text(cells, y - row_h / 2, "bold" if bold else "normal")
        y -= row_h
        if block.ruled:
            page.rule(y, RULE, 0.4)
    page.y = y


def _fit(page: _Page, blocks: Sequence[_Block]) -> _Scale:
    """The scale at which the invoice blocks fit under ``page.y``: 1, or smaller down to
    MIN_SCALE; 1 where they would not fit even then (they flow onto the next page)."""
    need = sum(b.height(_Scale()) for b in blocks if b.invoice)
    room = page.y - MARGIN_BOTTOM - FOOTER_ROOM
    if need <= room or need * MIN_SCALE > room:
        return _Scale()
    return _Scale(room / need)


KEEP_ROWS = 12  # a table this short moves whole to the next page rather than split


def _flow_tables(page: _Page, blocks: Sequence[_Block], new_page: Callable[[], _Page]) -> None:
    """Place blocks top to bottom: a short table that does not fit under the last one starts
    a new page, a long one is split across pages (its column titles repeated, a group's
    heading row never left alone at the bottom of a page)."""
    scale = _fit(page, blocks)
    bottom = MARGIN_BOTTOM + FOOTER_ROOM
    full = PAGE_H - MARGIN_TOP - bottom
    for block in blocks:
        remaining = list(range(len(block.rows)))
        whole = block.height(scale)
        if len(block.rows) <= KEEP_ROWS and page.y - whole < bottom - 1e-9 and whole <= full:
            page = new_page()
        cont = False
        while True:
            # At least the header and two rows (or the whole table) under the heading.
            need = scale.heading + scale.row * (int(block.header) + min(len(remaining), 2))
            if page.y - need < bottom - 1e-9:
                page = new_page()
            title = block.heading + (" (continued)" if cont else "")
            mid = page.y - scale.heading * 0.55
            page.text(
                MARGIN_X, mid, title, fontsize=10.5 * scale.factor, weight="bold", va="center"
            )
            if block.note and not cont:
                page.text(
                    PAGE_W - MARGIN_X,
                    mid,
                    block.note,
                    fontsize=7.5 * scale.factor,
                    color=MUTED,
                    ha="right",
                    va="center",
                )
            page.y -= scale.heading
            fit = int((page.y - bottom + 1e-9) // scale.row) - int(block.header)
            chunk = remaining[: max(fit, 1)]
            if len(chunk) > 1 and len(chunk) < len(remaining) and chunk[-1] in block.groups:
                chunk = chunk[:-1]
            _draw_table(page, block, chunk, scale, header=block.header)
            remaining = remaining[len(chunk) :]
            if not remaining:
                break
            page = new_page()
            cont = True
