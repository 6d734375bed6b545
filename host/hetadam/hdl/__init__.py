"""Builds of the hardware sources (hw/) with the tools that simulate them."""
