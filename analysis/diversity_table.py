"""Entry point: the measured diversity of each question_diversity level per trait (emrobust.analysis.diversity_table).
    python -m analysis.diversity_table [--traits oct_goodness oct_sycophancy] [--seeds 0 1 2] [--paraphrase]"""
from emrobust.analysis.diversity_table import main

if __name__ == "__main__":
    main()
