"""``dnncourse serve``: hand in homework on the web, see the hidden tests' verdict at once.

Students sign in, upload a notebook and watch it go from *queued* to *grading* to *graded*,
then read every check's points and message; instructors import the roster, watch each
assignment (scores, the rows that need a look), regrade after a test fix and download
``grades.csv`` for the LMS. Everything lives in one data folder by default (the service's
SQLite database, the stored submissions, nbgrader's gradebook).

* :mod:`~dnncourse.service.config`: the settings (a dataclass, filled by the CLI);
* :mod:`~dnncourse.service.models`: the service's own tables (SQLAlchemy);
* :mod:`~dnncourse.service.auth`: passwords (argon2), one-time sign-in links, CSRF;
* :mod:`~dnncourse.service.grader`: the one adapter to the grading engine;
* :mod:`~dnncourse.service.jobs`: the background queue (stored before queued, redone after a
  crash, each submission finished once);
* :mod:`~dnncourse.service.grades`: the grading policy, ``grades.csv``, the histogram;
* :mod:`~dnncourse.service.web`: what every route goes through (session, role, CSRF, the
  upload cap, security headers, error pages);
* :mod:`~dnncourse.service.student` and :mod:`~dnncourse.service.instructor`: the pages;
* :mod:`~dnncourse.service.app`: the Starlette application (routes, middleware, lifespan);
* :mod:`~dnncourse.service.server`: ``dnncourse serve``'s options and Uvicorn.

Anchors: Gradescope and PrairieLearn give autograder feedback at submission time and limit
resubmission (PrairieLearn/PrairieLearn#1195); nbgrader users ask for it (jupyter/nbgrader#869).
"""
