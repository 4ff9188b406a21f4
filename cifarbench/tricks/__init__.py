"""Training tricks the trainer switches on by config: EMA and SWA of weights, distillation and TTA.

Each module stands alone (torch only), so the trainer imports just what a run uses.
"""
