"""Measure the toy world's quality gates and print them as a table; see `t2v_unlearn.toyworld.gates`."""

from t2v_unlearn.toyworld.gates import main

if __name__ == "__main__":
    main()
