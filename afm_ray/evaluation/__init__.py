"""``afm-ray evaluate``: any model (registered, a run's, a folder) scored on a training recipe's fixed
validation or test set, logged as an MLflow evaluation run.

Sits above training and prediction: it loads the model through the registry, simulates the set with
the pipeline's actors and scores it with the training loop's evaluation.

    from afm_ray.evaluation import evaluate_registered
    from afm_ray.recipe import load_train_config
    report = evaluate_registered("models:/afm-dsh@current", load_train_config("configs/dsh.yaml"), "test")
    print("\n".join(report.lines()))
"""

from afm_ray.evaluation.registered import EvaluationReport, evaluate_registered

__all__ = ["EvaluationReport", "evaluate_registered"]
