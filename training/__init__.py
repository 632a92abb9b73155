"""Training side of SiteNet-DIM: Deep InfoMax pretraining, fine-tuning, evaluation and the label-masking study.

Needs torch and lightning; imports ``sitenet``, never ``serving``. Entry points: ``training.cli``.
"""
