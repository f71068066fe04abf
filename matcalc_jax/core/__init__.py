"""The bottom layer: layout conventions, argument checks and half-precision handling, used by
every other part and importing none of them."""
