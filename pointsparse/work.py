"""Work of a dataflow in rows of ``C_in x C_out`` multiply-accumulates: the rows that hold a real
pair (useful) and the rows it computes (padding and absent neighbours included)."""


class RowWork:
    """Mixin of the accounting records; a subclass provides ``useful_rows`` and ``computed_rows``."""

    useful_rows: int
    computed_rows: int

    def useful_macs(self, c_in: int, c_out: int) -> int:
        return self.useful_rows * c_in * c_out

    def computed_macs(self, c_in: int, c_out: int) -> int:
        return self.computed_rows * c_in * c_out

    @property
    def redundancy(self) -> float:
        """Share of computed MACs spent on padding or absent neighbours: ``1 - useful / computed``."""
        computed = self.computed_rows
        return 1.0 - self.useful_rows / computed if computed else 0.0
