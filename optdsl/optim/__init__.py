"""The optimizer layer: what users step. The torch.optim.Optimizer that runs a compiled program
(torch_optimizer), the optimizer over plain NumPy arrays (numpy_optimizer), hyperparameter
values (hypers), the mixed-precision policy (precision) and sharded parameters (distributed).
It uses a Program's interface and the runtime's runners, never the IR itself."""
