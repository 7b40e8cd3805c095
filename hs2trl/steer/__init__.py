"""SteerLM: the attribute string put into a conversation (`steering`), the SteerLM 2.0 objective (`objective`), its
response groups and their collation (`groups`), sampling for SteerLM 2.0 (`sampling`) and generation (`generation`).

May import: `hs2trl.rm`, `hs2trl.runtime`, `hs2trl.data`, `hs2trl.packing`."""
