"""The papers' tables at laptop scale: one command per table (see README.md in this folder)."""
