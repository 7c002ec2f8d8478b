"""nbgrader configuration for the dnncourse homework.

The instructor notebooks live in ``solutions/<assignment>/`` (nbgrader's source
directory); ``nbgrader generate_assignment`` writes the student notebooks into
``exercises/<assignment>/`` (its release directory). Never edit ``exercises/``
by hand: ``dnncourse release`` regenerates it.
"""

c = get_config()  # noqa: F821 (injected by traitlets when nbgrader loads this file)

c.CourseDirectory.root = "."
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.course_id = "dnncourse"

# Student stubs: the solution region becomes this, so an untouched notebook fails loudly.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Released notebooks carry no outputs and no execution counts.
c.ClearOutput.enabled = True
