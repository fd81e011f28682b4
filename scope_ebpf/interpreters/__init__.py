"""Everything that depends on the CPython version or build: where its structs'
fields are (offsets), and what its machine code looks like around the points
the tracer probes (disasm). One table per family of versions, in one place."""
