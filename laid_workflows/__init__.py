"""The roof of the workbench: the main job, the method comparison and its tables, the figures
(papermill), and the `laid` command line. Everything below (laid core, trainers, laid_analysis)
is imported from here and never imports it (pyproject.toml, [tool.importlinter]).

    main_job         `laid main`: data -> zoo -> eval -> compare -> analysis -> figures
    compare, tables  `laid compare` and the paper's Tables 1 and 3 from evaluation results
    figures          `laid figures`: every notebook through papermill; figures_support is their shared code
    cli              the `laid` entry point
"""
