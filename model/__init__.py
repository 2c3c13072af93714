"""Reference model: a small ESPCN-style x2 super-resolution network for luminance images."""
