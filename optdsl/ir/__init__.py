"""The IR: one op table (ops), SSA nodes (nodes), an interning builder, verifier and printer."""
