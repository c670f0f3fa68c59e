"""The study's configs: the demo's students share the student, steps and tokenizer, are at most
1/8 of the teacher, and read the files the teacher's steps write."""

from kdistill.models import count_parameters
from kdistill.models.hf import student_from_config
from kdistill.reasoning.study import FIT, demo_configs
from kdistill.reasoning.tokenizer import bundled_tokenizer


def test_demo_students_are_small_and_trained_alike(tmp_path):
    teacher, students = demo_configs(tmp_path)
    tok = bundled_tokenizer("chars")
    big = count_parameters(student_from_config(teacher.teacher.model.config, tok))
    assert set(students) == {"answers", "traces"} and set(students) <= set(FIT)
    steps = {c.train.max_steps for c in students.values()}
    assert len(steps) == 1 and {c.data.batch_size for c in students.values()} == {teacher.data.batch_size}
    for cfg in students.values():
        assert count_parameters(student_from_config(cfg.student.config, tok)) * 8 <= big
        assert str(cfg.train.output_dir).startswith(str(tmp_path)) and cfg.generate is None
    assert students["traces"].data.path == teacher.generate.output
    assert students["answers"].data.completion_field == "final"
