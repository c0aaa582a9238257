"""The front end: text to parse tree (parse), parse tree to AST (to_ast), AST to IR (check)."""
