from t2v_unlearn.judges.base import Judge, WatchedConcept

__all__ = ["Judge", "WatchedConcept"]
