"""The applications built on optdsl: the training demo, the 2-D landscape races, the racers
they share, ``optdsl bench``, and their shared terminal and figure helpers (ui). Nothing in
the compiler or the optimizer layer imports them."""
