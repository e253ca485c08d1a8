"""fasttarget: data loading and soft-target caching for image classification.

Implements the sample-to-target mappings of *Equally critical: samples, targets, and
their mappings in datasets*: Strategy A (one-hot), B (a teacher's soft target for each
augmented view) and C (one cached soft target per original sample), trained with the
paper's separation loss.
"""

__version__ = "0.1.0"
