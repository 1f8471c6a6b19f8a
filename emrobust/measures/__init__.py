"""The measures read off a cell's models and answers: the EM metrics and their intervals (metrics), judge calibration
and its verb (calibration, judge_cli), the judge-free probe, persona directions, persona checks and the persona
classifier (probe, monitor, persona, persona_classifier), general capability (capability), and what each judge-free
measure has been shown to detect (controls). The judges themselves are `emrobust.judges`."""
